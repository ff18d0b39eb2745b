"""Masked-LM training in plain PyTorch (no fairseq), with GP-TS choosing the masking online.

Only two parts of gpts-fairseq are used: the masking op (``gpts_fairseq.masking``) and the
bandit (``gpts_fairseq.bandit``). Every ``--interaction-updates`` updates the loop measures the
validation loss at a fixed reference masking (same masks every time), rewards the ψ just played
with the relative loss improvement, and lets GP-TS pick the next ψ.

    python examples/plain_pytorch.py --text corpus.txt [--updates 300] [--interaction-updates 20]

Prints one JSON line per interaction (also written to ``--history``). Characters are tokens, so
any UTF-8 text works; the last 10% of the text validates.
"""

import argparse
import json
import math

import torch
from torch import nn

from gpts_fairseq.bandit import ArmSpace, compute_reward, make_policy
from gpts_fairseq.masking import MaskingSpec, Psi, mask_tokens

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
REFERENCE_PSI = Psi(0.15, 0.1, 0.1)  # validation masking: fairseq's default, fixed
VALID_STEP = 0  # masking step of validation (training uses epochs >= 1)


def char_rows(text, vocabulary, length):
    """Rows ``<s> c_1 ... c_{length-2} </s>`` of consecutive characters (the last partial row dropped)."""
    ids = torch.tensor([vocabulary.get(ch, UNK) for ch in text], dtype=torch.int64)
    body = length - 2
    rows = ids[: len(ids) // body * body].view(-1, body)
    return torch.cat([torch.full((len(rows), 1), BOS), rows, torch.full((len(rows), 1), EOS)], dim=1)


class TinyEncoder(nn.Module):
    """A small pre-LN transformer encoder with a tied output projection."""

    def __init__(self, vocab_size, length, width=64, layers=2, heads=2):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width, padding_idx=PAD)
        nn.init.normal_(self.tokens.weight, std=width**-0.5)  # unit-scale logits at the start
        self.positions = nn.Parameter(torch.zeros(length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, source):
        hidden = self.encoder(self.tokens(source) + self.positions, src_key_padding_mask=source == PAD)
        return self.norm(hidden) @ self.tokens.weight.T


def masked_loss(model, tokens, spec, psi, *, seed, step, sample_ids):
    """Mean cross-entropy (bits) over the selected positions."""
    source, target = mask_tokens(tokens, spec, psi, seed=seed, step=step, sample_ids=sample_ids)
    logits = model(source)
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD) / math.log(2)


@torch.no_grad()
def validation_loss(model, valid, spec, seed):
    model.eval()
    loss = masked_loss(model, valid, spec, REFERENCE_PSI, seed=seed, step=VALID_STEP,
                       sample_ids=torch.arange(len(valid)))
    model.train()
    return float(loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", required=True, help="a UTF-8 text file")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--interaction-updates", type=int, default=20, help="updates per GP-TS interaction")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128, help="tokens per row, <s> and </s> included")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--history", help="write the interactions here as JSON lines")
    args = parser.parse_args(argv)
    for name in ("updates", "interaction_updates", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.length < 3:
        parser.error(f"--length must be >= 3, got {args.length}")

    text = open(args.text, encoding="utf-8", errors="replace").read()
    split = int(0.9 * len(text))
    vocabulary = {ch: len(SPECIALS) + i for i, ch in enumerate(sorted(set(text[:split])))}
    mask_idx = len(SPECIALS) + len(vocabulary)  # <mask>, the last id
    train, valid = char_rows(text[:split], vocabulary, args.length), char_rows(text[split:], vocabulary, args.length)
    if len(train) < args.batch_size or len(valid) == 0:
        parser.error(f"--text is too short for --batch-size {args.batch_size} rows of --length {args.length}")

    torch.manual_seed(args.seed)
    spec = MaskingSpec.build(vocab_size=mask_idx + 1, special_ids=range(len(SPECIALS)), mask_idx=mask_idx,
                             pad_idx=PAD, exact=False)
    model = TinyEncoder(mask_idx + 1, args.length)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    policy = make_policy("gp-ts", space=ArmSpace.paper_grid("rho"), seed=args.seed)
    order = torch.Generator().manual_seed(args.seed)  # the data order, apart from the model's RNG

    history = []
    loss_before = validation_loss(model, valid, spec, args.seed)
    decision = policy.decide(interaction=0, progress=0.0)
    batches_per_epoch = len(train) // args.batch_size
    for update in range(args.updates):
        epoch, batch = divmod(update, batches_per_epoch)
        if batch == 0:
            permutation = torch.randperm(len(train), generator=order)
        ids = permutation[batch * args.batch_size:(batch + 1) * args.batch_size]
        loss = masked_loss(model, train[ids], spec, Psi(**decision.psi), seed=args.seed, step=epoch + 1,
                           sample_ids=ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        if (update + 1) % args.interaction_updates == 0:  # an interaction ends: reward, then decide
            loss_after = validation_loss(model, valid, spec, args.seed)
            reward = compute_reward(loss_before, loss_after)
            started = (update + 1 - args.interaction_updates) / args.updates
            policy.observe(decision.arm, reward, progress=started)
            record = {"interaction": decision.interaction, "end_update": update + 1, "psi": decision.psi,
                      "val_loss": loss_after, "reward": reward}
            print(json.dumps(record), flush=True)
            history.append(record)
            loss_before = loss_after
            decision = policy.decide(interaction=decision.interaction + 1, progress=(update + 1) / args.updates)
    if args.history:
        with open(args.history, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in history)
    return history


if __name__ == "__main__":
    main()
