"""Training stage: data pipeline, models, training loop and the torch-side outputs.

Where things live: `config` (every knob, one dataclass), `data` (folders, decoding cache,
augmentation), `dedup` (duplicate groups and the grouped split), `models` (registry),
`engine` (train_one_epoch / evaluate), `trainer` (the full run), `cv` (grouped K-fold),
`distributed` (devices and torchrun), `checkpoint` (files that later stages read),
`dynamic_int8` (the reference's dynamic int8 of the Linear layers), `report` (plots).
"""
