"""The paper figures this repo compares itself with, in one table (no Keras: utils reads it).

Sabour, Frosst & Hinton 2017: Table 1 (MNIST test error %, mean ± std of 3 trials) with each
configuration's routings and reconstruction weight, the §5.2 affNIST experiment and the §6
MultiMNIST test errors.
"""

# log name -> (configuration, routings, lam_recon, paper test error %); routing 2 is the seed
# repo's setting (not in the paper)
TABLE1 = {
    'capsnet_r1_norecon': ('CapsNet, routing 1, no reconstruction', 1, 0.0, '0.34 ± 0.032'),
    'capsnet_r1_recon': ('CapsNet, routing 1, reconstruction', 1, 0.392, '0.29 ± 0.011'),
    'capsnet_r2_recon': ('CapsNet, routing 2, reconstruction', 2, 0.392, '–'),
    'capsnet_r3_norecon': ('CapsNet, routing 3, no reconstruction', 3, 0.0, '0.35 ± 0.036'),
    'capsnet_r3_recon': ('CapsNet, routing 3, reconstruction', 3, 0.392, '0.25 ± 0.005'),
}

# Table 1's first row: the baseline CNN's MNIST test error % (one figure, no std)
TABLE1_CNN = '0.39'

# §5.2: accuracy on expanded MNIST (the test set) and on affNIST, per --model
AFFNIST = {'capsnet': {'expanded_mnist': 0.9923, 'affnist': 0.79},
           'cnn': {'expanded_mnist': 0.9922, 'affnist': 0.66}}

# §6 / Table 1's last column: MultiMNIST test error % per --model (CapsNet: routing 3 with
# reconstruction; the CNN baseline)
MULTIMNIST = {'capsnet': 5.2, 'cnn': 8.1}
