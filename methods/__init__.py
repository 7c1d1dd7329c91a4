"""Built-in methods; every module here registers one method on import (discovered by name, lazily)."""
