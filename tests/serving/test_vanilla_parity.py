"""Issue 11: every video vanilla vLLM accepts is accepted with the plugin, whatever the method and retention, and
every one it refuses is refused with the same status.

The same media go to vanilla vLLM (no plugin) and to the plugin with ``method none`` (vLLM's exact layout: the
same prompt tokens) and with V-CAST at R = 0.9 (a dynamic layout that keeps almost every token, the case whose
text rows the encoder budget must still hold). The set holds the 240-frame 960x720 clip the issue reports vanilla
serving and the plugin once refusing, corrupt files and odd geometries, and URLs vLLM itself refuses.
"""

from __future__ import annotations

import pytest

from vllm_vtprune.testing.hostile import Media, RawChat, long_clip, odd_media
from vllm_vtprune.testing.videos import mp4_data_url

PLUGIN_SETTINGS = [{"method": "none"}, {"method": "vcast", "retention": 0.9}]


@pytest.fixture(scope="module")
def media(tmp_path_factory, videos) -> list[Media]:
    directory = tmp_path_factory.mktemp("parity-media")
    return [
        Media("long_240f_960x720", mp4_data_url(long_clip(directory)), True),
        Media("moving_objects_32f_256x256", mp4_data_url(videos["moving_objects"]), True),
        *odd_media(directory),
        # URLs vLLM answers itself, before any plugin code runs (its statuses, whatever they are).
        Media("local_file", "file:///etc/hostname", False),
        Media("data_url_not_base64", "data:video/mp4,abcdef", False),
        Media("not_a_url", "not a url", False),
        Media("empty_url", "", False),
    ]


def test_same_status_as_vanilla_for_every_video(vanilla_server, plugin_server, tiny_model, media):
    vanilla, plugin = RawChat(vanilla_server.url, tiny_model), RawChat(plugin_server.url, tiny_model)
    try:
        wrong = []
        for m in media:
            base = vanilla.ask([m.url], max_tokens=1)
            if m.decodable and base.status != 200:
                wrong.append(f"{m.name}: vanilla answered {base.status} {base.message[:120]!r}")
                continue
            for settings in PLUGIN_SETTINGS:
                reply = plugin.ask([m.url], vtprune=settings, max_tokens=1)
                case = f"{m.name} {settings}: {reply.status}"
                if reply.status != base.status:
                    wrong.append(f"{case} {reply.message[:120]!r}, vanilla {base.status}")
                elif reply.status != 200:
                    continue
                elif settings["method"] == "none" and reply.prompt_tokens != base.prompt_tokens:
                    wrong.append(f"{case}, {reply.prompt_tokens} prompt tokens unpruned, vanilla {base.prompt_tokens}")
                elif reply.prompt_tokens > base.prompt_tokens:
                    wrong.append(f"{case}, {reply.prompt_tokens} prompt tokens, vanilla {base.prompt_tokens}")
        assert not wrong, "\n".join(wrong)
    finally:
        vanilla.close()
        plugin.close()
