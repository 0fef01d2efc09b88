// Eigen matrices and arrays as tensor attributes, within and across processes.
#include "easysync/eigen.h"

#include <gtest/gtest.h>

#include "encode_util.h"

#include "easysync/easysync.h"
#include "process_util.h"

namespace easysync {
namespace {

using std::chrono::seconds;

using testing::Encode;

TEST(EigenAdapter, ColumnMajorMatrixTravelsRowMajor) {
  Eigen::MatrixXf m(2, 3);
  m << 1, 2, 3, 4, 5, 6;
  auto bytes = Encode(m);
  Tensor t;
  ASSERT_TRUE(ValueTraits<Tensor>::Decode(bytes, &t).ok());
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{2, 3}));
  const float* p = t.data_as<float>();
  EXPECT_EQ(std::vector<float>(p, p + 6), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  Eigen::MatrixXf back;
  ASSERT_TRUE(ValueTraits<Eigen::MatrixXf>::Decode(bytes, &back).ok());
  EXPECT_EQ(back, m);
}

TEST(EigenAdapter, ArraysFixedSizesAndMismatches) {
  Eigen::Array<double, 2, 2> a;
  a << 1.5, -2, 3, 4;
  auto bytes = Encode(a);
  Eigen::Array<double, 2, 2> back;
  ASSERT_TRUE((ValueTraits<Eigen::Array<double, 2, 2>>::Decode(bytes, &back)).ok());
  EXPECT_TRUE((back == a).all());
  Eigen::Matrix3d wrong_shape;
  EXPECT_EQ(ValueTraits<Eigen::Matrix3d>::Decode(bytes, &wrong_shape).code(),
            StatusCode::kTypeMismatch);
  Eigen::MatrixXf wrong_dtype;
  EXPECT_EQ(ValueTraits<Eigen::MatrixXf>::Decode(bytes, &wrong_dtype).code(),
            StatusCode::kTypeMismatch);
  Eigen::VectorXi empty(0);
  Eigen::VectorXi empty_back(3);
  ASSERT_TRUE(ValueTraits<Eigen::VectorXi>::Decode(Encode(empty), &empty_back).ok());
  EXPECT_EQ(empty_back.size(), 0);
}

TEST(EigenAdapter, MatrixCrossesProcessesAndReadsAsTensor) {
  const std::string cluster = testing::UniqueCluster("eigen");
  auto client = shm_connect(cluster);
  struct Model : SyncedObject {
    Synced<Eigen::MatrixXd> w{this, "w"};
    explicit Model(Client& c) : SyncedObject(c, "Model") {}
  } model(*client);
  const pid_t writer = testing::Spawn([&] {
    auto c = shm_connect(cluster);
    Model m(*c);
    Eigen::MatrixXd w = Eigen::MatrixXd::Identity(4, 5) * 2.5;
    w(3, 4) = -1;
    m.w = w;
    return 0;
  });
  ASSERT_TRUE(model.w.wait_for_change(seconds(20)));
  Eigen::MatrixXd expect = Eigen::MatrixXd::Identity(4, 5) * 2.5;
  expect(3, 4) = -1;
  EXPECT_EQ(model.w.get(), expect);
  // A Synced<Tensor> of the same attribute sees the row-major tensor.
  SyncedObject same(*client, "Model");
  Synced<Tensor> as_tensor(&same, "w");
  EXPECT_EQ(as_tensor.get().data_as<double>()[3 * 5 + 4], -1.0);
  EXPECT_EQ(testing::WaitChild(writer), 0);
}

}  // namespace
}  // namespace easysync
