import jax; jax.config.update("jax_enable_x64", True)
exec(open('scratch/proto_test.py').read().replace("for n in [10,20,50,200]","for n in [20,50]"))
g=respaced_gammas(sch,20); print(g)
