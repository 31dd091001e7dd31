"""The project verbs' fixtures (an isolated project directory, no channel or opencode
variable of the developer's shell), shared with the process tests in tests/project/."""

from tests.project.conftest import clean_env, project  # noqa: F401 (fixtures)
