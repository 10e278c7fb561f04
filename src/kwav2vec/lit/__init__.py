"""LightningModules (Pretrainer, fine-tuner) and LR schedules. Import the submodules directly
(`kwav2vec.lit.pretrain`, `kwav2vec.lit.schedules`) so importing this package stays cheap."""
