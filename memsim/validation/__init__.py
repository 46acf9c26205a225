"""Tools that check memsim against the reference `synaptogen` package and measure switching statistics
(used by the tests, scripts/device_demo.py and benchmarks/device.py). Simulating a chip needs none of them:
`import memsim` does not import this subpackage."""
