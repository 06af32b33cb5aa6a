import numpy as np

from recsys.features import OOV_ID, Vocabulary


def test_an_id_is_the_same_key_as_int_numpy_int_float_or_text():
    # a users table whose id column had a gap arrives as float: 1.0 must still be user "1"
    vocab = Vocabulary.build("user_id", [1, 2, 10])
    assert vocab.values == ["1", "2", "10"]
    for value in (1, np.int64(1), 1.0, np.float64(1.0), "1"):
        assert vocab.id(value) == vocab.id(1) != OOV_ID
        assert value in vocab
    assert vocab.id(1.5) == OOV_ID and vocab.id(3) == OOV_ID and vocab.id(None) == OOV_ID
    assert Vocabulary.build("user_id", [1.0, 2.0]).values == ["1", "2"]
    # text values are untouched
    assert Vocabulary.build("zip", ["01", "1"]).id("01") != Vocabulary.build("zip", ["01", "1"]).id("1")
