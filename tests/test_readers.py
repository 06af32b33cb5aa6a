"""Readers for every MovieLens format, on hand-written files."""

import pytest

from recsys.datasets.formats import FORMATS, RowError, decode_line, detect_format
from recsys.datasets.readers import read_movielens
from recsys.errors import DataError
from tests.conftest import write


def _acc_holds(tables):
    for acc in tables.accounting().values():
        assert acc["rows_read"] == acc["rows_kept"] + sum(acc["rejected"].values())


def test_ml100k_reader(ml100k_dir):
    t = read_movielens(ml100k_dir)
    assert t.format == "ml-100k"
    assert list(t.ratings.columns) == ["user_id", "movie_id", "rating", "timestamp"]
    assert t.ratings.dtypes["rating"] == "float32" and t.ratings.dtypes["user_id"] == "int64"
    assert len(t.ratings) == 4 and t.ratings["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    movies = t.movies.set_index("movie_id")
    assert movies.loc[3, "title"] == "Misérables, Les (1995)"  # latin-1 accent decoded
    assert movies.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert movies.loc[1, "year"] == 1995
    assert movies.loc[4, "year"] == 1997  # no release date: from the title
    users = t.users.set_index("user_id")
    assert users.loc[2, "gender"] == "F" and users.loc[2, "age"] == 53 and users.loc[3, "occupation"] == "writer"
    _acc_holds(t)


def test_ml1m_reader(ml1m_dir):
    t = read_movielens(ml1m_dir)
    assert t.format == "ml-1m"
    assert len(t.ratings) == 3
    users = t.users.set_index("user_id")
    assert users.loc[1, "age"] == 1 and users.loc[1, "occupation"] == "k-12 student"
    assert users.loc[2, "age"] == 56 and users.loc[2, "occupation"] == "self-employed"
    movies = t.movies.set_index("movie_id")
    assert movies.loc[2000, "title"] == "Amélie (2001)" and movies.loc[2000, "year"] == 2001
    assert movies.loc[661, "genres"] == "Animation|Children's|Musical"
    # '::' is the separator and occurs inside no field: every field count is exact
    assert not t.reads["movies"].rejected


def test_mllatest_reader(mllatest_dir):
    t = read_movielens(mllatest_dir)
    assert t.format == "ml-latest"
    assert t.ratings["rating"].tolist() == [4.0, 3.5, 0.5]  # half stars kept
    movies = t.movies.set_index("movie_id")
    assert movies.loc[2, "title"] == "American President, The (1995)"  # comma inside quotes
    assert movies.loc[3, "genres"] == ""  # "(no genres listed)"
    # no users file: the users are the rated ids, demographics unknown
    assert t.users["user_id"].tolist() == [1, 7] and t.users["gender"].isna().all()
    assert t.reads["ratings"].header_lines == 1 and t.reads["ratings"].rows_read == 3


def test_recbole_reader(recbole_dir):
    t = read_movielens(recbole_dir)
    assert t.format == "recbole"
    movies = t.movies.set_index("movie_id")
    assert movies.loc[302, "genres"] == "Crime|Film-Noir|Mystery|Thriller"
    assert movies.loc[242, "year"] == 1996
    assert t.users.set_index("user_id").loc[186, "zip"] == "00000"  # zip stays text


def test_bad_lines_are_rejected_with_reasons_and_counted(ml1m_dir):
    write(ml1m_dir / "ratings.dat",
          "1::1193::5::978300760\n"
          "1::661::abc::978302109\n"      # bad rating
          "1::661::nan::978302109\n"      # NaN rating
          "x::661::3::978302109\n"        # bad id
          "-4::661::3::978302109\n"       # negative id
          "1::661::3\n"                   # missing column
          "1,661,3,978302109\n"           # wrong separator
          "1::661::::978302109\r\n"       # empty field, CRLF
          "2::1193::4::978298413")        # truncated last line (no newline) is still whole
    t = read_movielens(ml1m_dir)
    reasons = t.accounting()["ratings"]["rejected"]
    assert t.accounting()["ratings"]["rows_read"] == 9
    assert len(t.ratings) == 2
    assert reasons == {"bad_rating": 2, "bad_id": 2, "wrong_field_count": 2, "missing_field": 1}
    _acc_holds(t)
    bad = t.reads["ratings"].rejected[0]
    assert bad["line"] == 2 and bad["text"] == "1::661::abc::978302109"


def test_mixed_encodings_bom_and_crlf():
    assert decode_line("Amélie".encode("utf-8")) == "Amélie"
    assert decode_line("Amélie".encode("latin-1")) == "Amélie"
    assert decode_line(b"\xef\xbb\xbf1::2::3::4\r") == "1::2::3::4"


def test_detect_format_and_errors(tmp_path, ml100k_dir, recbole_dir):
    assert detect_format(ml100k_dir).name == "ml-100k"
    assert detect_format(recbole_dir).name == "recbole"
    with pytest.raises(DataError, match="raw data directory not found"):
        detect_format(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MovieLens ratings file found"):
        detect_format(tmp_path / "empty")
    with pytest.raises(DataError, match="data.format is 'ml-1m' but ratings.dat"):
        detect_format(ml100k_dir, "ml-1m")


def test_empty_ratings_file_and_directory_instead_of_file(ml100k_dir):
    write(ml100k_dir / "u.data", "")
    with pytest.raises(DataError, match="u.data: the ratings file has no data lines"):
        read_movielens(ml100k_dir)
    (ml100k_dir / "u.data").unlink()
    (ml100k_dir / "u.data").mkdir()
    with pytest.raises(DataError, match="u.data: expected the ratings file, found a directory"):
        read_movielens(ml100k_dir)


def test_each_parser_rejects_garbage():
    for spec in FORMATS.values():
        for table, parse in spec.parsers.items():
            with pytest.raises(RowError):
                parse("complete garbage")
