"""The model zoo: importing this package registers every model."""

from medseg.models import attention_unet, r2unet, unet, unetpp, vnet  # noqa: F401
