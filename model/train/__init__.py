"""Training the speech LM: data packing, the teacher/student loop, placement search, and their CLI."""
