// placeholder, implementation follows
