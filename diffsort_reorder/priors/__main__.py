from ..orders.priors.cli import main

main()
