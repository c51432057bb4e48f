"""Text before synthesis: markup (pauses), lexicons, normalization, sentences and chunk planning.

Every step keeps character offsets into the text the client sent, so word timings can point back
at exactly what the user wrote (``Token``).
"""
