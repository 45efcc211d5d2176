"""The contracts: buf lint, buf breaking against the previous commit, fresh codegen, and
the shape every later issue builds on."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2

from eco2.auth.v1 import auth_pb2
from eco2.character.v1 import character_pb2
from eco2.chat.v1 import chat_pb2
from eco2.events.v1 import events_pb2
from eco2.images.v1 import images_pb2
from eco2.location.v1 import location_pb2
from eco2.scan.v1 import scan_pb2

MODULES = [auth_pb2, character_pb2, location_pb2, images_pb2, chat_pb2, scan_pb2, events_pb2]


def _buf() -> str:
    import shutil

    path = shutil.which("buf")
    if not path:
        pytest.fail("buf is not installed: pip install -e '.[dev]' installs buf-bin")
    return path


def test_buf_lint(repo_root):
    result = subprocess.run([_buf(), "lint"], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_against_previous_commit(repo_root):
    """No change may break a contract that already landed (FILE rules)."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True)

    if git("rev-parse", "--verify", "HEAD~1").returncode != 0:
        pytest.skip("no previous commit to compare with (first commit or shallow clone)")
    if git("cat-file", "-e", "HEAD~1:buf.yaml").returncode != 0:
        pytest.skip("the previous commit has no buf.yaml")
    result = subprocess.run(
        [_buf(), "breaking", "--against", ".git#ref=HEAD~1"], cwd=repo_root, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_detects_a_break(repo_root, tmp_path):
    """The check above can fail: removing a field from a copy of the contracts is caught."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repo_root / "proto", copy / "proto", ignore=shutil.ignore_patterns("*.py", "*.pyi"))
    shutil.copy(repo_root / "buf.yaml", copy / "buf.yaml")
    events = copy / "proto/eco2/events/v1/events.proto"
    events.write_text(events.read_text().replace("  uint64 after_seq = 2;\n", ""))
    result = subprocess.run(
        [_buf(), "breaking", str(copy), "--against", str(repo_root)], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "after_seq" in result.stdout + result.stderr


def test_generated_code_is_fresh():
    result = subprocess.run([sys.executable, "-m", "eco2.services.codegen", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "module,service",
    [
        (auth_pb2, "eco2.auth.v1.AuthService"),
        (character_pb2, "eco2.character.v1.CharacterService"),
        (location_pb2, "eco2.location.v1.LocationService"),
        (images_pb2, "eco2.images.v1.ImageService"),
        (chat_pb2, "eco2.chat.v1.ChatService"),
        (scan_pb2, "eco2.scan.v1.ScanService"),
        (events_pb2, "eco2.events.v1.EventService"),
    ],
)
def test_every_service_is_defined(module, service):
    names = [s.full_name for s in module.DESCRIPTOR.services_by_name.values()]
    assert service in names


def test_operations_of_the_seed_system_are_covered():
    def methods(module, name):
        return {m.name: m for m in module.DESCRIPTOR.services_by_name[name].methods}

    auth = methods(auth_pb2, "AuthService")
    assert {
        "DevSignIn",
        "StartOAuth",
        "CompleteOAuth",
        "Refresh",
        "SignOut",
        "GetMe",
        "UpdateProfile",
        "DeleteAccount",
        "GetJwks",
    } <= set(auth)
    ch = methods(character_pb2, "CharacterService")
    assert {"ListCharacters", "GetCharacter", "MatchCharacter", "GrantReward", "ListCollection"} <= set(ch)
    loc = methods(location_pb2, "LocationService")
    assert {"SearchNearby", "SearchText", "GetPlace"} <= set(loc)
    img = methods(images_pb2, "ImageService")
    assert img["Upload"].client_streaming and not img["Upload"].server_streaming
    assert img["ReadImage"].server_streaming
    chat = methods(chat_pb2, "ChatService")
    assert chat["StreamChat"].server_streaming and chat["StreamChat"].output_type.full_name == "eco2.events.v1.Event"
    assert {"SendMessage", "ProvideInput", "ListConversations", "GetConversation", "DeleteConversation"} <= set(chat)
    scan = methods(scan_pb2, "ScanService")
    assert scan["StreamScan"].server_streaming and scan["StreamScan"].output_type.full_name == "eco2.events.v1.Event"
    ev = methods(events_pb2, "EventService")
    assert ev["Subscribe"].server_streaming
    assert "after_seq" in ev["Subscribe"].input_type.fields_by_name


def test_event_envelope():
    fields = events_pb2.Event.DESCRIPTOR.fields_by_name
    for name in ("job_id", "seq", "kind", "stage", "node", "delta", "time", "traceparent"):
        assert name in fields, name
    assert fields["seq"].type == fields["seq"].TYPE_UINT64
    assert {o.name for o in events_pb2.Event.DESCRIPTOR.oneofs} == {"payload"}
    kinds = set(events_pb2.EventKind.keys())
    assert {
        "EVENT_KIND_DONE",
        "EVENT_KIND_ERROR",
        "EVENT_KIND_NEEDS_INPUT",
        "EVENT_KIND_TOKEN",
        "EVENT_KIND_STAGE",
        "EVENT_KIND_TOOL",
    } <= kinds


def test_enums_start_unspecified_and_intents_are_closed():
    for module in MODULES:
        fd = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fd)
        enums = list(fd.enum_type) + [e for m in fd.message_type for e in m.enum_type]
        for enum in enums:
            assert enum.value[0].number == 0 and enum.value[0].name.endswith("_UNSPECIFIED"), enum.name
    intents = {k.removeprefix("INTENT_").lower() for k in chat_pb2.Intent.keys()} - {"unspecified"}
    assert intents == {
        "waste",
        "character",
        "location",
        "bulk_waste",
        "recyclable_price",
        "collection_point",
        "weather",
        "image_generation",
        "web_search",
        "general",
    }


def test_python_names_live_under_eco2(tmp_path):
    """Installed, the project exposes only `eco2`: no bare top-level services or gateway."""
    for module in MODULES:
        assert module.__name__.startswith("eco2.") and module.__name__.endswith("_pb2")
    probe = (
        "import importlib.util as u, eco2.services.registry, eco2.gateway;"
        "print(u.find_spec('services') is None and u.find_spec('gateway') is None)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr
