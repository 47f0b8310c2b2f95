"""Write the GPT-2 LoRA job's data: jobs/data/gpt2_lora/{train,val}.jsonl, one {"text": ...} a line.

    python jobs/make_gpt2_lora_data.py [--train 800] [--val 100]

The examples are consecutive paragraphs of jobs/data/python_reference.txt (shipped with the project),
cut to about 2,000 characters (~500 GPT-2 tokens, the job's block size), so the job runs as documented
before you swap in your own text. Deterministic: the same files every time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def examples(text: str, limit: int = 2000) -> list[str]:
    out, current = [], ""
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        if current and len(current) + len(paragraph) > limit:
            out.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph[:limit]
    return out + ([current] if current else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "data" / "gpt2_lora")
    args = parser.parse_args(argv)
    found = examples((HERE / "data" / "python_reference.txt").read_text(encoding="utf-8"))
    wanted = args.train + args.val
    rows = [found[i % len(found)] for i in range(wanted)]  # repeats only if asked for more than there is
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:args.train]), ("val", rows[args.train:])):
        with open(args.out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in part)
    print(f"wrote {args.train} + {args.val} examples to {args.out} ({len(found)} distinct paragraphs of text)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
