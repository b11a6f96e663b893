"""Built-in quantization algorithms, one module each. Importing this package imports every module in it (in name
order), and each registers its spec: adding an algorithm is adding a module here."""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
