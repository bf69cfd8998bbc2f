"""Train one LoRA adapter for the default model on a JSONL of {prompt, reply}; write it as a GGUF adapter.

    .venv-train/bin/python scripts/train_lora.py DATA.jsonl OUT.gguf [--epochs N] [--rank R]

Runs on CPU torch + transformers + peft (see scripts/train_demo_adapters.sh; never in CI). The base
weights are the GGUF's own, dequantized by transformers, so the adapter fits the model llama.cpp
serves. Prompts are rendered with loramux's ChatTemplate from the GGUF, exactly as the server renders
them. Only v/o/gate/up/down projections are adapted: GGUF stores q/k permuted for llama.cpp's RoPE,
so LoRAs on q/k would need that permutation on export.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from gguf import GGUFReader, GGUFWriter
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.default_model import default_model_path
from engine.llama.chat_template import ChatTemplate
from engine.request import ChatMessage

# PEFT module name → GGUF tensor name part
GGUF_NAMES = {
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def render_prompt(template: ChatTemplate, prompt: str) -> str:
    return "".join(text for text, _ in template.render([ChatMessage(role="user", content=prompt)]))


def build_examples(data: Path, tokenizer, template: ChatTemplate, max_len: int) -> list[tuple[list[int], list[int]]]:
    examples = []
    for line in data.read_text().splitlines():
        row = json.loads(line)
        prompt_ids = tokenizer(render_prompt(template, row["prompt"]), add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(row["reply"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + reply_ids)[:max_len]
        labels = ([-100] * len(prompt_ids) + reply_ids)[:max_len]  # learn the reply only
        examples.append((ids, labels))
    return examples


def export_gguf(model, out: Path, *, alpha: float) -> int:
    writer = GGUFWriter(str(out), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    n = 0
    for name, param in model.state_dict().items():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        # base_model.model.model.layers.{i}.{module}.lora_A.default.weight
        layer = int(name.split(".layers.")[1].split(".")[0])
        module = next(m for m in GGUF_NAMES if f".{m}." in name)
        half = "lora_a" if ".lora_A." in name else "lora_b"
        # f16, as llama.cpp's convert_lora_to_gguf.py writes adapters: half the bytes to load
        writer.add_tensor(f"blk.{layer}.{GGUF_NAMES[module]}.weight.{half}", param.detach().half().numpy())
        n += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    gguf_path = default_model_path()
    reader = GGUFReader(gguf_path)
    template_field = reader.fields["tokenizer.chat_template"]
    template = ChatTemplate(str(template_field.contents()), bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    alpha = 2.0 * args.rank
    model = get_peft_model(
        model,
        LoraConfig(
            r=args.rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=[m.split(".")[-1] for m in GGUF_NAMES]
        ),
    )
    examples = build_examples(args.data, tokenizer, template, args.max_len)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    steps = max(1, int(len(examples) * args.epochs / args.batch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    model.train()
    start = time.time()
    order: list[int] = []
    for step in range(steps):
        if len(order) < args.batch:
            order += random.sample(range(len(examples)), len(examples))
        batch = [examples[order.pop()] for _ in range(args.batch)]
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id or 0
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 5 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    n = export_gguf(model, args.out, alpha=alpha)
    print(f"wrote {args.out} ({n} tensors, rank {args.rank}, alpha {alpha})")


if __name__ == "__main__":
    main()
