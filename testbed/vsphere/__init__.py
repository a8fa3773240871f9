"""vcsim plus vmaccel's test layer (snapshots, CBT, faults), built from Go sources in vcsim/."""
