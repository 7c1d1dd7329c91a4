"""Built-in tasks; every module here registers its tasks on import (discovered by name, lazily)."""
