"""ddkit: dataset distillation toolkit (data → select → teacher → synthesize → evaluate → report).

The Python API (ddkit.api) is reached from here without importing torch until it is used:

    ddkit.teacher(...), ddkit.distill(...), ddkit.evaluate(...), ddkit.select(...), ddkit.load_run(path)

`ddkit.distill`, `ddkit.evaluate`, `ddkit.select` and `ddkit.teacher` are also the library's modules of those
names (`from ddkit.distill import DistillConfig` keeps working); calling one calls the API function.
"""
import sys
import types

__version__ = "0.1.0"
INTERRUPTED = "ddkit: interrupted (finished work is kept; rerun the same command to resume)"
_CALLABLE = ("distill", "evaluate", "select", "teacher")   # modules that, called, run ddkit.api's function
_LAZY = ("load_run", "Run", "Teacher", "DDKitError")


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from . import api
        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system sets ddkit.<name> when the submodule is first imported, wherever that happens
        if name in _CALLABLE and isinstance(value, types.ModuleType):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _CALLABLE:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        from . import api, utils
        return getattr(api if hasattr(api, name) else utils, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_CALLABLE, *_LAZY]
