"""Built-in configs shipped inside the package (detectron2 ``model_zoo``): ``get_config_file("shapes_detector")``.

Example::

    from d2lightning.config import get_cfg
    from d2lightning.model_zoo import get_config_file

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("shapes_detector"))
"""

from d2lightning.model_zoo.model_zoo import builtin_config_names, get_config_file, resolve_config_file

__all__ = ["builtin_config_names", "get_config_file", "resolve_config_file"]
