"""One module per registered stage of the SGID chain (``core.registry``), plus the ablation profiles that rerun them."""
