"""The flows floor: the case flow (pipeline_test.py), its command line (cli.py), and its rooms: spec/, run/, plan/,
evidence/ (with pack/) and suite/; the demo and its local AWS emulator."""
