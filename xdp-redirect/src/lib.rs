//! The XDP program that steers load-balancer traffic into AF_XDP sockets, and its loader.
