"""Does an EMA of the weights, or a paired probe, make the reward less noisy? (issue 9, items 2-3)

Protocol (fixed by the lead before any run; written here before the first run, not re-tuned
after seeing results):

- **Setting.** wikitext-2 characters with exactly the pre-registered suite's model, optimiser
  and learning-rate schedule (``pretrain.Settings`` with a budget of 4,000 updates,
  ``pretrain.model_args``/``run_args``). The reward is the suite's relative reward on its 12
  reward batches at the reference masking (rho 0.15, gamma = lambda = 0.1), always with the
  reward batches and masks of seed 0 (the state run's).
- **State run.** ``constant-0.30``, seed 0, the 4,000-update schedule, stopped after state S2.
  Checkpoints at S1 = update 1,000 (the unigram plateau) and at S2 = the first multiple of 250
  at which its reference loss is below wikitext-2's previous-character entropy 3.372 bits
  (S2 = 3,000 if it is not below by then). An EMA of the weights (decay 0.99, started at update
  0 from the initial weights, updated after every optimizer step: fairseq's ``--store-ema
  --ema-decay 0.99``) runs through the state run and is saved in its checkpoints.
- **Replicates.** From each state: arms rho = 0.15 and rho = 0.45 (gamma = lambda = 0.1),
  replicates r = 1..6, replicate r with training seed r (data order and mask stream); 200
  updates each, restored with the optimizer and learning-rate scheduler state (the schedule
  continues), the EMA continued. The reward loss (12 batches) is measured at +0, +50 and +200
  updates on the raw weights and on the EMA weights. 2 states x 2 arms x 6 = 24 runs.
- **Rewards.** Relative, r = (l_start - l_end) / l_start, for n = 50 and n = 200 updates, raw
  and EMA (l_start and l_end both on the same kind of weights).
- **Unpaired.** noise = pooled within-arm sd of r over the replicates; effect = mean r(0.45) -
  mean r(0.15); score = |effect| / noise. **EMA ships** (as a documented option) iff its score
  is >= 1.25 x the raw weights' score at n = 200 in BOTH states.
- **Paired probe.** Common random numbers = the same replicate seed r for both arms (the same
  batches and the same uniform draws); d_r = r_r(0.45) - r_r(0.15); paired noise = sd over r
  of d_r; the unpaired difference's noise is noise x sqrt(2). **The probe ships** iff paired
  noise <= 1/3 of the unpaired difference's noise at the same n in both states AND its cost
  (n extra updates of the challenger + one reward pass of 12 batches at the measured forward
  cost, as a share of an interaction of L = 200 updates) is within the issue's 2 % interaction
  overhead goal. Its cost is reported for n = 50 and n = 200 either way.
- **Report.** Every number (table printed, JSON in ``benchmarks/results/reward_noise.json``,
  no machine paths, with the load average), including every criterion that fails.
"""
