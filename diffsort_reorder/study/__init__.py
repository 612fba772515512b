"""Many runs: a study searches each learned method's space with Optuna (:mod:`.search`,
:mod:`.space`), re-runs the best configs on paired seeds (:mod:`.study`), keeps what its workers
share in one storage (:mod:`.storage`) and writes the report (:mod:`.report`, :mod:`.stats`)."""

from .cli import console, main
from .study import Study, StudyStopped

__all__ = ["Study", "StudyStopped", "console", "main"]
