"""Data: knowledge-set construction, Derm1M† records, the Grain input pipeline and the SynthDerm generator."""
