mod cleanup;
mod disk;
mod local_tree;
