"""Everything that speaks to vCenter. The only package that imports pyVmomi and the vSphere
Automation SDK; vim objects never leave it (callers get the frozen dataclasses of ``models``)."""
