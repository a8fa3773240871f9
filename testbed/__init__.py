"""The test bed: a vSphere simulator with vmaccel's extensions (``testbed.vsphere``) and guest disk
images made by the guests' own tools (``testbed.guestimages``). Used by the tests, the demo and
the benches; never installed with vmaccel."""
