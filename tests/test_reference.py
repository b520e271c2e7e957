"""Image references parse and normalise as Docker does (distribution/reference rules)."""
import pytest

from hpcrun.errors import ImageError
from hpcrun.image.reference import HUB_API, parse, split_registry

D64 = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize("s, registry, repo, tag, digest", [
    ("ubuntu", HUB_API, "library/ubuntu", "latest", None),
    ("ubuntu:22.04", HUB_API, "library/ubuntu", "22.04", None),
    ("library/ubuntu", HUB_API, "library/ubuntu", "latest", None),
    ("docker.io/ubuntu", HUB_API, "library/ubuntu", "latest", None),
    ("index.docker.io/library/ubuntu:22.04", HUB_API, "library/ubuntu", "22.04", None),
    ("org/img", HUB_API, "org/img", "latest", None),
    ("ghcr.io/org/img:tag", "ghcr.io", "org/img", "tag", None),
    ("localhost:5000/ns/img@" + D64, "localhost:5000", "ns/img", None, D64),
    ("localhost/img", "localhost", "img", "latest", None),
    ("docker://busybox", HUB_API, "library/busybox", "latest", None),
    ("docker://127.0.0.1:5000/a/b/c:v1.2_3", "127.0.0.1:5000", "a/b/c", "v1.2_3", None),
    ("Host/img", "Host", "img", "latest", None),  # upper case makes the first part a host
    ("ubuntu:22.04@" + D64, HUB_API, "library/ubuntu", "22.04", D64),
    ("my-reg.example.com:443/a__b/c.d-e", "my-reg.example.com:443", "a__b/c.d-e", "latest", None),
])
def test_parse_normalises(s, registry, repo, tag, digest):
    r = parse(s)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repo, tag, digest)


@pytest.mark.parametrize("s, canonical, familiar", [
    ("ubuntu:22.04", "docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
    ("org/img", "docker.io/org/img:latest", "org/img:latest"),
    ("localhost:5000/ns/img:tag", "localhost:5000/ns/img:tag", "localhost:5000/ns/img:tag"),
    ("busybox@" + D64, "docker.io/library/busybox@" + D64, "busybox@" + D64),
])
def test_str_and_familiar(s, canonical, familiar):
    r = parse(s)
    assert str(r) == canonical
    assert r.familiar == familiar


def test_canonical_string_round_trips():
    r = parse("ghcr.io/org/img:1.0@" + D64)
    assert parse(str(r)) == r


def test_ref_prefers_digest():
    assert parse("a:t@" + D64).ref == D64
    assert parse("a:t").ref == "t"


@pytest.mark.parametrize("s, why", [
    ("", "empty reference"),
    ("Ubuntu", "repository name must be lowercase"),
    ("ubuntu:", "invalid tag"),
    ("ubuntu:-bad", "invalid tag"),
    ("ubuntu@sha256:abc", "invalid digest"),
    ("ubuntu@sha256:" + "A" * 64, "64 lowercase hex"),
    ("a//b", "invalid repository component"),
    ("-a", "invalid repository component"),
    ("foo bar", "whitespace"),
    ("http://host/img", "docker:// transport"),
    ("localhost:port/x", "invalid registry host"),
    ("0123456789abcdef" * 4, "image id"),
    ("a/" + "b" * 300, "longer than 255"),
])
def test_unknown_syntax_is_refused_with_hint(s, why):
    with pytest.raises(ImageError) as ei:
        parse(s)
    assert ei.value.what.startswith("invalid reference format: ")
    assert why in ei.value.what
    assert "\n" not in ei.value.what
    assert ei.value.hint and "REPOSITORY" in ei.value.hint


@pytest.mark.parametrize("s, host", [
    ("docker.io", HUB_API),
    ("https://index.docker.io/v1/", HUB_API),
    ("localhost:5000", "localhost:5000"),
    ("http://127.0.0.1:8080", "127.0.0.1:8080"),
])
def test_split_registry(s, host):
    assert split_registry(s) == host


def test_split_registry_refuses_garbage():
    with pytest.raises(ImageError):
        split_registry("not a host")


def test_parse_name_refuses_digest_and_upper_case():
    from hpcrun.image.reference import parse_name
    assert str(parse_name("myimg:1")) == "docker.io/library/myimg:1"
    for bad in ("x@sha256:" + "a" * 64, "Upper/Case:1", "UPPER"):
        with pytest.raises(ImageError, match="invalid reference format"):
            parse_name(bad)


def test_parse_lookup_ids_and_names():
    from hpcrun.image.reference import parse_lookup
    assert parse_lookup("9c27f81ac5b8") is None
    assert parse_lookup("sha256:" + "a" * 64) is None
    assert parse_lookup("ubuntu:22.04").tag == "22.04"
    with pytest.raises(ImageError, match="repository name must be lowercase"):
        parse_lookup("Upper/Case")
