"""Training loops: shared resumable-checkpoint helpers; the ISA and masked-pair trainers."""
