"""Stage runners: each has a config dataclass, ``run(cfg)`` and ``main(argv)``; jobs/ and ``vsa`` call them."""
