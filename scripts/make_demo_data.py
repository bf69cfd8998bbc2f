"""Generate training data for the demo adapters from the base model's own replies.

    .venv/bin/python scripts/make_demo_data.py OUT_DIR

Each prompt is answered by the base model (through loramux's engine); the replies are then
transformed: ALL CAPS for `caps`, the first sentence only for `short`. Training on the model's own
replies teaches the style, not new content.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import anyio

from engine import ChatMessage, EngineConfig, GenerateRequest, SamplingParams
from engine.llama import LlamaEngine

TOPICS = """rivers volcanoes owls bread glaciers chess bees comets tea bicycles deserts whales jazz
maps rainbows gardening sleep bridges libraries coffee penguins forests lighthouses salt clocks
mountains music photosynthesis recycling sharks the moon kites trains cheese wind honey islands
robots paper dinosaurs snow tomatoes ants castles soap candles frogs telescopes origami yoga
elephants thunder vaccines spiders bamboo sailing pottery caves autumn fireflies""".split()
TEMPLATES = [
    "Tell me about {}.",
    "What is interesting about {}?",
    "Give me one tip related to {}.",
    "Explain {} to a child.",
]


def prompts() -> list[str]:
    return [t.format(topic) for topic in TOPICS for t in TEMPLATES]


def first_sentence(text: str) -> str:
    text = text.strip().split("\n")[0].strip()
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    sentence = match.group(1) if match else text
    return sentence if sentence.endswith((".", "!", "?")) else sentence.rstrip(",;:") + "."


async def base_replies(all_prompts: list[str]) -> dict[int, str]:
    async with LlamaEngine(EngineConfig(max_sequences=8, context_per_sequence=512)) as engine:
        replies: dict[int, str] = {}
        limiter = anyio.Semaphore(8)

        async def one(i: int) -> None:
            async with limiter:
                sampling = SamplingParams(temperature=0.7, seed=i, max_tokens=96)
                msg = (ChatMessage(role="user", content=all_prompts[i]),)
                replies[i] = (await engine.complete(GenerateRequest(messages=msg, sampling=sampling))).text.strip()

        async with anyio.create_task_group() as tg:
            for i in range(len(all_prompts)):
                tg.start_soon(one, i)
    return replies


def write_sets(out: Path) -> None:
    all_prompts = prompts()
    replies = anyio.run(base_replies, all_prompts)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "caps.jsonl").open("w") as caps, (out / "short.jsonl").open("w") as short:
        for i, prompt in enumerate(all_prompts):
            reply = replies[i]
            if not reply:
                continue
            caps.write(json.dumps({"prompt": prompt, "reply": reply.upper()}) + "\n")
            short.write(json.dumps({"prompt": prompt, "reply": first_sentence(reply)}) + "\n")
    print(f"wrote {len(all_prompts)} examples to {out}", file=sys.stderr)


if __name__ == "__main__":
    write_sets(Path(sys.argv[1] if len(sys.argv) > 1 else "build/demo_data"))
