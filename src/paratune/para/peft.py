"""Register PARA as a PEFT method, so ``peft.get_peft_model(model, ParaConfig())`` and
``PeftModel.from_pretrained`` work after ``import paratune``.

PEFT 0.21 registers methods through ``register_peft_method``, but only for names already in its
``PeftType`` enum, and offers no public way to extend the enum. We add one member with the enum's own
internals, then use the public registration. Every assumption is checked afterwards, so a PEFT release that
changes them fails here, at import, with a message, instead of misbehaving later.
"""

from __future__ import annotations

import peft
from peft.utils import PeftType

from .config import PARA_PEFT_TYPE, ParaConfig
from .model import ParaModel

TESTED_PEFT = ("0.21",)


class PeftRegistrationError(ImportError):
    pass


def _add_peft_type_member(value: str) -> None:
    if value in PeftType._value2member_map_:
        return
    member = str.__new__(PeftType, value)
    member._name_ = value
    member._value_ = value
    type.__setattr__(PeftType, value, member)
    PeftType._member_map_[value] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(value)


def register() -> None:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    try:
        _add_peft_type_member(PARA_PEFT_TYPE)
        if PEFT_TYPE_TO_TUNER_MAPPING.get(PeftType(PARA_PEFT_TYPE)) is not ParaModel:
            register_peft_method(name=PARA_PEFT_TYPE.lower(), config_cls=ParaConfig, model_cls=ParaModel)
        para_type = PeftType(PARA_PEFT_TYPE)
        checks = {
            "PeftType('PARA') resolves": para_type is PeftType[PARA_PEFT_TYPE],
            "PeftType lists PARA": PARA_PEFT_TYPE in list(PeftType),
            "config class registered": PEFT_TYPE_TO_CONFIG_MAPPING.get(para_type) is ParaConfig,
            "tuner class registered": PEFT_TYPE_TO_TUNER_MAPPING.get(para_type) is ParaModel,
            "prefix registered": PEFT_TYPE_TO_PREFIX_MAPPING.get(para_type) == ParaModel.prefix,
        }
    except Exception as error:  # an internal of PEFT moved
        raise PeftRegistrationError(
            f"paratune could not register PARA with peft {peft.__version__} ({error!r}); "
            f"paratune is tested with peft {', '.join(TESTED_PEFT)}.x"
        ) from error
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise PeftRegistrationError(
            f"registering PARA with peft {peft.__version__} left it inconsistent ({', '.join(failed)}); "
            f"paratune is tested with peft {', '.join(TESTED_PEFT)}.x"
        )
