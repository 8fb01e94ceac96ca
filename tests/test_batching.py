"""Batching mechanics: token-budget batches, padding, and the prefix-cached forward against plain forwards."""

import torch

from steerlab.batching import pad, positions_from_mask, run_prefix, token_batches


def test_batches_sort_and_cut_where_padding_would_exceed_the_bound():
    lengths = [237, 145, 199, 156, 158, 164]
    # 145..164 pad to 164 (5% padding); adding 199 would make 17% padding; 199 and 237 pad 8%.
    assert token_batches(lengths, max_rows=16) == [[1, 3, 4, 5], [2, 0]]
    assert token_batches(lengths, max_rows=2) == [[1, 3], [4, 5], [2, 0]]
    assert token_batches([10, 10, 10], max_rows=16, max_padding=0.0) == [[0, 1, 2]]
    assert token_batches([10, 11], max_rows=16, max_padding=0.0) == [[0], [1]]


def test_batches_hold_a_token_budget_not_a_row_count():
    # 100 rows of 10 tokens fit 40 per batch under 400 tokens; 4 rows of 150 tokens fit 2.
    short = token_batches([10] * 100, max_tokens=400)
    assert [len(b) for b in short] == [40, 40, 20]
    assert [len(b) for b in token_batches([150] * 4, max_tokens=400)] == [2, 2]
    # a row longer than the whole budget still gets a batch of its own
    assert token_batches([900, 10], max_tokens=400) == [[1], [0]]
    assert sorted(i for b in token_batches([7, 3, 9, 3, 12], max_tokens=20) for i in b) == [0, 1, 2, 3, 4]


def test_pad_left_and_right_with_positions_that_ignore_padding():
    ids, mask = pad([[5, 6, 7], [8]], 0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask = pad([[5, 6, 7], [8]], 0, left=False)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@torch.inference_mode()
def test_prefix_cache_continuations_equal_whole_sequences(tiny_llama):
    """Left-padded prefixes run once, repeated (interleaved and tiled) for continuations, give each full sequence's logits."""
    lm = tiny_llama
    prefixes, suffixes = [[5, 6, 7, 8], [9, 10]], [[11, 12], [13], [14, 15, 16], [17]]
    for interleave in (True, False):
        prefix = run_prefix(lm, prefixes).repeated(2, interleave=interleave)
        inputs, _suffix_mask = prefix.continuation(lm, suffixes)
        logits = lm.model(**inputs).logits
        owners = [0, 0, 1, 1] if interleave else [0, 1, 0, 1]
        for row, (owner, suffix) in enumerate(zip(owners, suffixes, strict=False)):
            alone = lm.model(input_ids=torch.tensor([prefixes[owner] + suffix])).logits[0, -len(suffix) :]
            torch.testing.assert_close(logits[row, : len(suffix)], alone, rtol=1e-4, atol=1e-5)
    # the prefix's own cache is left as it was, so it can serve another group of continuations
    first = run_prefix(lm, prefixes)
    before = first.cache.get_seq_length()
    inputs, _ = first.repeated(1, interleave=False).continuation(lm, [[11], [12]])
    lm.model(**inputs)
    assert first.cache.get_seq_length() == before
