#!/usr/bin/env bash
# From raw text to a GP-TS pre-training run: tokenize -> fairseq-preprocess -> fairseq-train
# with --task gpts_mlm (RoBERTa-base settings, the masking chosen online by GP-TS).
#
#   examples/pretrain_from_raw_text.sh --train TRAIN.txt --valid VALID.txt --out DIR \
#       [--gpt2-bpe ENCODER_JSON VOCAB_BPE DICT_TXT | --sentencepiece VOCAB_SIZE | --chars] \
#       [--prepare-only] [-- more fairseq-train options, which override the ones below]
#
# Tokenizers:
#   --gpt2-bpe      GPT-2 byte-level BPE, as fairseq's RoBERTa pre-training README does; pass the
#                   GPT-2 release's encoder.json, vocab.bpe and fairseq's dict.txt (downloaded by you)
#   --sentencepiece a unigram sentencepiece model of VOCAB_SIZE pieces trained on TRAIN.txt
#                   (needs `pip install sentencepiece`); its ▁ pieces allow --mask-whole-words
#   --chars         one token per character, spaces as ▁ (the default; needs nothing)
# --prepare-only stops after fairseq-preprocess (DIR/data-bin), to train with your own command.
#
# Input text is read as UTF-8, the same way for every tokenizer: invalid bytes become U+FFFD,
# NUL bytes are dropped and a leading byte-order mark is removed; one warning line per file says
# how many. The cleaned text goes to DIR/tokens/{train,valid}.txt.
# DIR receives tokens/, data-bin/, checkpoints/ (with gpts_history.jsonl) and tensorboard/; a
# step that fails leaves none of its output files behind (each is written to FILE.tmp, then renamed).
# PYTHON (default: python3) is the interpreter that has fairseq and gpts-fairseq installed.
set -euo pipefail

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "error: $1" >&2
  exit 2
}

PYTHON=${PYTHON:-python3}
train="" valid="" out="" tokenizer=chars encoder_json="" vocab_bpe="" dict_txt="" spm_size="" prepare_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --train) [[ $# -ge 2 ]] || usage "--train needs a file"; train=$2; shift 2 ;;
    --valid) [[ $# -ge 2 ]] || usage "--valid needs a file"; valid=$2; shift 2 ;;
    --out) [[ $# -ge 2 ]] || usage "--out needs a directory"; out=$2; shift 2 ;;
    --gpt2-bpe)
      [[ $# -ge 4 ]] || usage "--gpt2-bpe needs ENCODER_JSON VOCAB_BPE DICT_TXT"
      tokenizer=gpt2; encoder_json=$2; vocab_bpe=$3; dict_txt=$4; shift 4 ;;
    --sentencepiece)
      [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -ge 8 ]] || usage "--sentencepiece needs a vocabulary size >= 8"
      tokenizer=sentencepiece; spm_size=$2; shift 2 ;;
    --chars) tokenizer=chars; shift ;;
    --prepare-only) prepare_only=1; shift ;;
    --) shift; break ;;
    *) usage "unknown argument '$1' (fairseq-train options go after --)" ;;
  esac
done
[[ -n $train ]] || usage "--train is required"
[[ -n $valid ]] || usage "--valid is required"
[[ -n $out ]] || usage "--out is required"
for file in "$train" "$valid" ${encoder_json:+"$encoder_json" "$vocab_bpe" "$dict_txt"}; do
  [[ -s $file ]] || usage "'$file' does not exist or is empty"
done
if [[ $tokenizer == sentencepiece ]] && ! "$PYTHON" -c "import sentencepiece" 2>/dev/null; then
  usage "--sentencepiece needs the sentencepiece package: pip install sentencepiece (or use --chars)"
fi

mkdir -p "$out/tokens"
trap 'rm -f "$out"/tokens/*.tmp' EXIT  # a failed step's partial outputs
workers=$(nproc 2>/dev/null || echo 1)

# 0. clean: UTF-8 text with bad bytes replaced, NULs and a BOM removed (every tokenizer reads this)
"$PYTHON" - "$out/tokens" "$train" "$valid" <<'PY'
import codecs
import os
import sys

out, inputs = sys.argv[1], dict(zip(("train", "valid"), sys.argv[2:4]))
invalid = 0


def replace_counting(error):
    """U+FFFD for each maximal invalid UTF-8 sequence, counting its bytes."""
    global invalid
    invalid += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("replace_counting", replace_counting)
for split, path in inputs.items():
    invalid, nuls = 0, 0
    with open(path, "rb") as raw:
        bom = raw.read(3) == codecs.BOM_UTF8
    target = os.path.join(out, f"{split}.txt")
    with open(path, encoding="utf-8-sig", errors="replace_counting") as source, \
            open(f"{target}.tmp", "w", encoding="utf-8") as sink:
        for line in source:
            nuls += line.count("\0")
            sink.write(line.replace("\0", ""))
    os.replace(f"{target}.tmp", target)
    notes = [f"{invalid} invalid UTF-8 bytes replaced by U+FFFD" if invalid else "",
             f"{nuls} NUL bytes dropped" if nuls else "", "a byte-order mark removed" if bom else ""]
    if any(notes):
        print(f"warning: {path}: " + ", ".join(filter(None, notes)), file=sys.stderr)
PY

# 1. tokenize: space-separated tokens, one line per input line (empty lines kept: they end documents)
case $tokenizer in
  gpt2)
    for split in train valid; do
      "$PYTHON" -m fairseq.examples.roberta.multiprocessing_bpe_encoder \
        --encoder-json "$encoder_json" --vocab-bpe "$vocab_bpe" \
        --inputs "$out/tokens/$split.txt" --outputs "$out/tokens/$split.bpe.tmp" --keep-empty --workers "$workers"
      mv -f "$out/tokens/$split.bpe.tmp" "$out/tokens/$split.bpe"
    done
    dict_args=(--srcdict "$dict_txt") ;;
  sentencepiece)
    "$PYTHON" - "$out/tokens" "$spm_size" <<'PY'
import os
import sys

import sentencepiece as spm

out, size = sys.argv[1], int(sys.argv[2])
spm.SentencePieceTrainer.train(input=f"{out}/train.txt", model_prefix=f"{out}/spm", vocab_size=size,
                               model_type="unigram", character_coverage=1.0)
model = spm.SentencePieceProcessor(model_file=f"{out}/spm.model")
for split in ("train", "valid"):
    target = f"{out}/{split}.bpe"
    with open(f"{out}/{split}.txt", encoding="utf-8") as source, open(f"{target}.tmp", "w", encoding="utf-8") as sink:
        for line in source:
            sink.write(" ".join(model.encode(line.strip(), out_type=str)) + "\n")
    os.replace(f"{target}.tmp", target)
PY
    dict_args=() ;;
  chars)
    "$PYTHON" - "$out/tokens" <<'PY'
import os
import sys

out = sys.argv[1]
for split in ("train", "valid"):
    target = f"{out}/{split}.bpe"
    with open(f"{out}/{split}.txt", encoding="utf-8") as source, open(f"{target}.tmp", "w", encoding="utf-8") as sink:
        for line in source:
            sink.write(" ".join("\u2581" if ch == " " else ch for ch in " ".join(line.split())) + "\n")
    os.replace(f"{target}.tmp", target)
PY
    dict_args=() ;;
esac

# 2. binarize (fairseq-preprocess)
"$PYTHON" -m fairseq_cli.preprocess --only-source "${dict_args[@]}" \
  --trainpref "$out/tokens/train.bpe" --validpref "$out/tokens/valid.bpe" \
  --destdir "$out/data-bin" --workers "$workers"
if (( prepare_only )); then
  echo "prepared $out/data-bin; train with: fairseq-train $out/data-bin --task gpts_mlm ..." >&2
  exit 0
fi

# 3. pre-train: RoBERTa-base's recipe with masked_lm swapped for gpts_mlm and GP-TS over rho
"$PYTHON" -m fairseq_cli.train "$out/data-bin" \
  --task gpts_mlm --criterion gpts_masked_lm --arch roberta_base \
  --sample-break-mode complete --tokens-per-sample 512 --batch-size 16 --update-freq 16 \
  --optimizer adam --adam-betas '(0.9,0.98)' --adam-eps 1e-6 --weight-decay 0.01 --clip-norm 0 \
  --lr 0.0005 --lr-scheduler polynomial_decay --warmup-updates 10000 \
  --total-num-update 125000 --max-update 125000 \
  --gpts-policy gp-ts --gpts-arms rho --gpts-interaction-updates 1000 --gpts-reward-batches 50 \
  --skip-invalid-size-inputs-valid-test \
  --save-dir "$out/checkpoints" --tensorboard-logdir "$out/tensorboard" --log-format json \
  "$@"
