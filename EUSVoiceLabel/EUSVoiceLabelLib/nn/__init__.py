"""The networks and what runs them: the two-branch network and its variants, the keyword
network of the pretrained voice branch, the optimised inference path, Grad-CAM, device and
seed choice, and reading and writing torch files safely."""
