"""linkseal simulator: link faults and attacks between agents and the hub, with ground truth."""
