"""Every docstring example in the public modules runs and prints what it says."""
import doctest
import importlib

import pytest

MODULES = ["rgflow", "rgflow.chains", "rgflow.findings", "rgflow.model", "rgflow.train",
           "rgflow.analysis", "rgflow.plot", "rgflow.experiments", "rgflow.sweep", "rgflow.torch_ref", "rgflow.report",
           "rgflow.runtime"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
