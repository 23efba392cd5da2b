"""Pure domain core: site model, config, allocator, LP planner, controller. No I/O."""
