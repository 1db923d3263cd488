"""Human pose estimation (paper Sec. 4.3, Tab. 6): SimpleBaseline (Xiao et al. 2018) on MPII."""
