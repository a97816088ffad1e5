"""The test control plane (rig), the fake kubelet and the k8s_cluster fixture."""
