exec(open('scratch/proto_test.py').read().replace("for n in [10,20,50,200]","for n in []"))
import numpy as np
for lof in [False, True]:
  src=open('scratch/fast_samplers.py').read()
  if lof: src=src.replace("c_prev = -0.5 / r  #","c_prev = -0.5 / r; c_prev[-1] = 0.0  #")
  exec("import numpy as np\nimport jax\nimport jax.numpy as jnp\n"+src)
  for n in [10,20,50]:
    for sp in [respaced_gammas, logsnr_gammas]:
        g=sp(sch,n); t=target(g)
        e2=float(jnp.abs(dpm_solver_sample(denoise,cond,key,g,clip_x0=False)-t).max())
        print(lof,n,sp.__name__,e2)
