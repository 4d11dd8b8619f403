import os
from pathlib import Path
def default_cache_dir() -> Path:
    return Path(os.environ.get("JAXMAP_CACHE") or Path.home() / ".cache" / "jaxmap")
