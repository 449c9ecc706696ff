"""The environment libtpu reads when this machine has no TPU chips.

`make install` installs libtpu on Linux x86_64 so that `make plan --topology` can compile for TPU slices
without one. JAX then tries a TPU backend at every start, and libtpu, finding neither chips nor the Cloud
TPU metadata (jax sets TPU_SKIP_MDS_QUERY when it sees no chips), prints five lines of warnings and an
`E0000 ... unexpected worker hostname` error before JAX falls back to the CPU or GPU. Naming a worker and
an accelerator type here keeps it quiet. Only done when no Google PCI device is present (TPU chips are
Google PCI devices), and never over a value the user set, so a real TPU VM is untouched.
"""
from __future__ import annotations

import glob
import os

GOOGLE_PCI_VENDOR = "0x1ae0"
NO_TPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": "v5litepod-4"}


def has_google_pci_device() -> bool:
    """True when any PCI device is Google's (TPU chips are; so is gVNIC, which errs on the safe side)."""
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as file:
                if file.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def quiet_libtpu_without_tpu() -> None:
    """Set NO_TPU_ENV (each key only if unset) when this machine has no TPU chips; call before JAX starts a
    backend."""
    if not has_google_pci_device():
        for key, value in NO_TPU_ENV.items():
            os.environ.setdefault(key, value)
