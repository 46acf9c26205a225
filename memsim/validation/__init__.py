"""Tools that check memsim against the reference `synaptogen` package and measure switching statistics
(used by the tests, scripts/device_demo.py and benchmarks/device.py), and pre-cycled programming pulse by pulse,
the reference of its faster path (tests/memsim/test_precycle.py, benchmarks/crossbar.py --precycle). Simulating a
chip needs none of them: `import memsim` does not import this subpackage."""
