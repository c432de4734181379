"""The tiny models the pass tests transform, with their reference logits."""

import pytest
import torch
from fx_helpers import IDS

from qpasses.models.tiny import build_tiny_llama


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-llama-96"])
def model(request):
    m = build_tiny_llama(request.param)
    with torch.no_grad():
        ref = m(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits.numpy()
    return m, ref
