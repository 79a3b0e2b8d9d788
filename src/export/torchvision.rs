//! torchvision-named weights of a (collapsed) network, the list of removed blocks, and the few
//! lines of PyTorch that rebuild the torchvision model and load them.
