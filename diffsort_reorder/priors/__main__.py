from ..orders.priors.cli import console, main

__all__ = ["console", "main"]  # console: what installs made before the move still call

if __name__ == "__main__":
    main()
